"""Generate the built-in toy translation task: English-like -> German-like sentences.

The target language needs what real translation needs, in miniature: a lexicon,
agreement (article and adjective endings follow the noun's gender and case, so
the article depends on a word to its right), and reordering (verb-second after
"today", verb-final in "that"-clauses). A small Mega learns it in minutes on a CPU.

    python examples/translation/toy_data.py OUT_DIR [--train 20000 --valid 500 --test 500 --seed 1]

writes OUT_DIR/{train,valid,test}.{en,de}, one sentence per line.
"""
import argparse
import os
import random

NOUNS = {  # english: (german, gender)
    "cat": ("katze", "f"), "dog": ("hund", "m"), "house": ("haus", "n"), "tree": ("baum", "m"),
    "car": ("auto", "n"), "book": ("buch", "n"), "child": ("kind", "n"), "woman": ("frau", "f"),
    "man": ("mann", "m"), "bird": ("vogel", "m"), "garden": ("garten", "m"), "river": ("fluss", "m"),
    "city": ("stadt", "f"), "table": ("tisch", "m"), "window": ("fenster", "n"), "door": ("tuer", "f"),
}
ADJECTIVES = {"big": "gross", "small": "klein", "red": "rot", "old": "alt", "new": "neu", "green": "gruen",
              "happy": "froh", "quiet": "still"}
VERBS = {"sees": "sieht", "likes": "mag", "finds": "findet", "buys": "kauft", "paints": "malt",
         "visits": "besucht"}
PREPOSITIONS = {"with": "mit", "near": "bei", "behind": "hinter"}
DEFINITE = {"nom": {"m": "der", "f": "die", "n": "das"}, "acc": {"m": "den", "f": "die", "n": "das"},
            "dat": {"m": "dem", "f": "der", "n": "dem"}}
INDEFINITE = {"nom": {"m": "ein", "f": "eine", "n": "ein"}, "acc": {"m": "einen", "f": "eine", "n": "ein"},
              "dat": {"m": "einem", "f": "einer", "n": "einem"}}


def adjective_ending(definite: bool, case: str, gender: str) -> str:
    """German weak (after der/die/das) and mixed (after ein/eine) adjective endings."""
    if case == "dat" or (case == "acc" and gender == "m"):
        return "en"
    if definite:
        return "e"
    return {"m": "er", "f": "e", "n": "es"}[gender]


def noun_phrase(rng: random.Random, case: str):
    """A random noun phrase as (english words, german words)."""
    noun = rng.choice(sorted(NOUNS))
    german_noun, gender = NOUNS[noun]
    definite = rng.random() < 0.6
    english = ["the" if definite else "a"]
    german = [(DEFINITE if definite else INDEFINITE)[case][gender]]
    if rng.random() < 0.5:
        adjective = rng.choice(sorted(ADJECTIVES))
        english.append(adjective)
        german.append(ADJECTIVES[adjective] + adjective_ending(definite, case, gender))
    return english + [noun], german + [german_noun]


def sentence_pair(rng: random.Random):
    """One (english, german) sentence pair from the toy grammar."""
    subject_en, subject_de = noun_phrase(rng, "nom")
    object_en, object_de = noun_phrase(rng, "acc")
    verb = rng.choice(sorted(VERBS))
    extra_en, extra_de = [], []
    if rng.random() < 0.4:
        preposition = rng.choice(sorted(PREPOSITIONS))
        place_en, place_de = noun_phrase(rng, "dat")
        extra_en, extra_de = [preposition] + place_en, [PREPOSITIONS[preposition]] + place_de
    form = rng.choice(("main", "today", "that"))
    if form == "main":
        english = subject_en + [verb] + object_en + extra_en
        german = subject_de + [VERBS[verb]] + object_de + extra_de
    elif form == "today":
        english = ["today"] + subject_en + [verb] + object_en + extra_en
        german = ["heute", VERBS[verb]] + subject_de + object_de + extra_de
    else:
        english = ["i", "know", "that"] + subject_en + [verb] + object_en + extra_en
        german = ["ich", "weiss", "dass"] + subject_de + object_de + extra_de + [VERBS[verb]]
    return " ".join(english) + " .", " ".join(german) + " ."


def write_splits(out_dir: str, sizes: dict, seed: int) -> None:
    """Write the splits; test and valid sentences never occur in train."""
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    seen = set()
    for split in ("test", "valid", "train"):
        pairs = []
        while len(pairs) < sizes[split]:
            pair = sentence_pair(rng)
            if pair[0] in seen and split != "train":
                continue
            if split != "train":
                seen.add(pair[0])
            elif pair[0] in seen:
                continue
            pairs.append(pair)
        for lang, index in (("en", 0), ("de", 1)):
            with open(os.path.join(out_dir, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(pair[index] + "\n" for pair in pairs)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--valid", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    write_splits(args.out_dir, {"train": args.train, "valid": args.valid, "test": args.test}, args.seed)


if __name__ == "__main__":
    main()
