"""Regenerate the offline French demo set (LJSpeech layout) with espeak-ng.

    python recipes/demo_data/regenerate.py

Writes, next to this script: `metadata.csv` (`id|text|normalized_text`, UTF-8, no header),
`speakers.json` (clip id -> speaker index, one speaker per espeak-ng voice) and
`wavs/<id>.wav` (16 kHz mono 16-bit PCM: small to ship; the pipeline resamples to 24 kHz).
Deterministic for a given espeak-ng version. Needs `espeak-ng` on PATH (apt install espeak-ng).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from csm_adapt.audio_io import load_audio, save_wav

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 16_000

# (espeak-ng voice, words per minute): one speaker each; rates differ for a little variety.
VOICES = [("fr+m1", 165), ("fr+f3", 175), ("fr+m3", 155), ("fr+f2", 170)]

# (text as written, normalized text as spoken). The written forms deliberately carry what
# readers and tokenizers trip on: a leading quote, « », ’, accents, ç, œ, digits, "NA".
SENTENCES = [
    ("Bonjour, je m’appelle Camille.", None),
    ("Il fait très beau aujourd’hui à Besançon.", None),
    ('"Allons-y", dit-il en souriant.', None),
    ("Le garçon a mangé 3 pommes.", "Le garçon a mangé trois pommes."),
    ("« Où est la gare ? » demanda-t-elle.", None),
    ("Ma sœur préfère le thé au café.", None),
    ("M. Dupont arrive à 8 h.", "Monsieur Dupont arrive à huit heures."),
    ("Nous partirons demain matin, très tôt.", None),
    ("L’été dernier, il a beaucoup plu.", None),
    ("Ce livre coûte 12 euros en librairie.", "Ce livre coûte douze euros en librairie."),
    ("Les enfants jouent dans le jardin.", None),
    ("Pourquoi n’es-tu pas venu hier soir ?", None),
    ("« NA » veut dire non applicable.", None),
    ("La réunion commence à midi précis.", None),
    ("J’ai oublié mon parapluie chez toi.", None),
    ("Le train de Lyon a du retard.", None),
    ("Elle lit un roman policier passionnant.", None),
    ("Il y a 2 chats sur le toit.", "Il y a deux chats sur le toit."),
    ("Quelle belle journée pour se promener !", None),
    ("Le boulanger ouvre sa boutique à l’aube.", None),
    ("Tu veux un peu plus de soupe ?", None),
    ("Les feuilles tombent doucement en automne.", None),
    ("« C’est incroyable », répondit le vieil homme.", None),
    ("Mon frère habite près de la mer.", None),
    ("On a vu un film drôle au cinéma.", None),
    ("Le musée est fermé le lundi.", None),
    ("Parlez plus lentement, s’il vous plaît.", None),
    ("La neige recouvre déjà les montagnes.", None),
    ("Nous avons reçu 5 lettres ce matin.", "Nous avons reçu cinq lettres ce matin."),
    ("Ce gâteau au chocolat est délicieux.", None),
    ("Il faut éteindre la lumière en partant.", None),
    ("Le chien aboie dès qu’il entend un bruit.", None),
    ("Les élèves écoutent le professeur attentivement.", None),
    ("Où as-tu rangé les clés de la voiture ?", None),
    ("Le marché du samedi est très animé.", None),
    ('Il a crié : "Attention !" trop tard.', None),
    ("Notre voisine cultive des tomates et des fraises.", None),
    ("Le concert a duré presque 3 heures.", "Le concert a duré presque trois heures."),
    ("Je reviendrai bientôt, c’est promis.", None),
    ("La bibliothèque ouvre à neuf heures et demie.", None),
]


def main() -> None:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found on PATH (apt install espeak-ng)")
    wav_dir = HERE / "wavs"
    if wav_dir.exists():
        shutil.rmtree(wav_dir)
    wav_dir.mkdir()
    rows, speakers = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        for i, (text, spoken) in enumerate(SENTENCES):
            # Round-robin voices so every speaker gets a mix of sentence lengths.
            speaker = i % len(VOICES)
            voice, wpm = VOICES[speaker]
            clip_id = f"{voice.replace('+', '_')}_{i + 1:03d}"
            spoken = spoken or text
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), spoken], check=True)
            save_wav(wav_dir / f"{clip_id}.wav", load_audio(raw, sample_rate=SAMPLE_RATE), SAMPLE_RATE)
            rows.append(f"{clip_id}|{text}|{spoken}")
            speakers[clip_id] = speaker
    (HERE / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (HERE / "speakers.json").write_text(json.dumps(speakers, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
