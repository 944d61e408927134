"""The harness's word pool: deterministic pseudo-words that prompts are built from.

Prompts are sequences of these words. The embedded model's tokenizer is trained on the same pool,
so on the embedded server each word (with its leading space) is exactly one token, which makes
token lengths and cache-block boundaries exact there; on other stacks a word is a few tokens.
"""

from __future__ import annotations

import random
from functools import lru_cache

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
POOL_SIZE = 1200
_POOL_SEED = 20261128


@lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """Return the fixed, ordered pool of distinct lowercase pseudo-words."""
    rng = random.Random(_POOL_SEED)
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < POOL_SIZE:
        syllables = rng.choice((2, 2, 3))
        w = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if rng.random() < 0.3:
            w += rng.choice(_CONSONANTS)
        if w not in seen:
            seen.add(w)
            words.append(w)
    return tuple(words)


def draw_words(rng: random.Random, n: int) -> list[str]:
    """Draw n words (with replacement) from the pool using the given generator."""
    pool = word_pool()
    return [pool[rng.randrange(len(pool))] for _ in range(n)]
