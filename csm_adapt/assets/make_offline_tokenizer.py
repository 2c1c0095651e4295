"""Regenerate `offline-tokenizer.json`, the small tokenizer used without network access.

    python csm_adapt/assets/make_offline_tokenizer.py

A byte-level BPE (like Llama-3's, so any text encodes) trained on the short French + English
corpus below, with Llama-3's special-token strings so `TextTokenizer` finds BOS/EOS the same way
for both. 1024 ids in all, matching the `micro` model config's text vocabulary. It lives beside the
file it writes so the package ships both. Deterministic: same corpus, same tokenizers -> same file.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>"]
OUTPUT = Path(__file__).resolve().parent / "offline-tokenizer.json"

CORPUS = """\
Bonjour, je m’appelle Camille et j’habite à Besançon, une ville de l’est de la France.
Il fait très beau aujourd’hui ; nous irons nous promener au bord de la rivière.
« Où est la gare ? » demanda-t-elle. « Tout droit, puis à gauche », répondit le garçon.
Ma sœur préfère le thé au café, mais mon frère boit du chocolat chaud le matin.
Monsieur Dupont arrive à huit heures. La réunion commence à midi précis.
L’été dernier, il a beaucoup plu ; cet hiver, la neige recouvre déjà les montagnes.
Les enfants jouent dans le jardin pendant que les parents préparent le dîner.
Pourquoi n’es-tu pas venu hier soir ? On a vu un film drôle au cinéma.
Le boulanger ouvre sa boutique à l’aube ; le pain frais sent bon dans toute la rue.
Les élèves écoutent le professeur attentivement et prennent des notes.
Notre voisine cultive des tomates, des fraises et des haricots verts.
Parlez plus lentement, s’il vous plaît. Je reviendrai bientôt, c’est promis.
Un, deux, trois, quatre, cinq, six, sept, huit, neuf, dix, onze, douze, vingt, cent, mille.
Lundi, mardi, mercredi, jeudi, vendredi, samedi, dimanche. Janvier, février, mars, avril.
Où as-tu rangé les clés de la voiture ? Elles sont sur la table de la cuisine.
Le musée est fermé le lundi, mais la bibliothèque ouvre à neuf heures et demie.
Hello, my name is Camille and I live in a small town near the mountains.
The weather is lovely today, so we will take a walk along the river after lunch.
"Where is the station?" she asked. "Straight ahead, then turn left," the boy replied.
My sister prefers tea to coffee, but my brother drinks hot chocolate every morning.
The children are playing in the garden while their parents cook dinner.
Why didn't you come last night? We watched a funny film at the cinema.
The students listen to the teacher carefully and take notes in their books.
One, two, three, four, five, six, seven, eight, nine, ten, twenty, hundred, thousand.
Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February, March.
Please speak more slowly. I will be back soon, I promise. Thank you very much!
[0]Bonjour. [1]Salut ! [2]Hello. [3]Good morning. [4]Bonsoir. [5]Merci beaucoup.
"""


def build() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols up front, so text outside the corpus still encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return tokenizer


if __name__ == "__main__":
    build().save(str(OUTPUT), pretty=False)
    print(f"wrote {OUTPUT}")
