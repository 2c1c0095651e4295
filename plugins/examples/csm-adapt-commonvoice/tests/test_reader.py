"""How a plugin tests itself: build the reader from its options and check the Samples it yields."""

from csm_adapt_commonvoice import CommonVoiceOptions, CommonVoiceReader


def test_reads_clips_and_numbers_speakers_by_first_appearance(tmp_path):
    (tmp_path / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\n"
        "aaa\tone.mp3\tBonjour « tout » le monde.\t2\n"
        "bbb\ttwo.mp3\tSalut.\t0\n"
        "aaa\tthree.mp3\tOui\t1\n"
    )
    samples = list(CommonVoiceReader(CommonVoiceOptions(root=tmp_path)).read())
    assert [s.id for s in samples] == ["one", "two", "three"]
    assert [s.turns[0].speaker for s in samples] == [0, 1, 0]
    assert samples[0].turns[0].text == "Bonjour « tout » le monde."
    assert samples[0].turns[0].audio == tmp_path / "clips" / "one.mp3"
    assert samples[2].source == f"{tmp_path / 'train.tsv'}:4"
