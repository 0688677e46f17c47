"""The metrics of `text_similarity` graders, each a number from 0 to 1 (1: the texts match).

- `fuzzy_match`: rapidfuzz's `fuzz.ratio` / 100, the normalized Indel similarity of the two strings (what OpenAI
  names: "fuzzy string match … using rapidfuzz").
- `bleu`: NLTK's `sentence_bleu` against the one reference, up to 4-grams with uniform weights; `auto_reweigh`
  (an input shorter than 4 words uses the n-gram orders it has, so an exact 3-word match scores 1) and Chen and
  Cherry's smoothing method 1 (an n-gram order with no match counts as 0.1 matches instead of making the whole
  score 0).
- `gleu`: NLTK's `sentence_gleu` (Google's sentence-level BLEU: the smaller of n-gram precision and recall over
  1- to 4-grams).
- `meteor`: NLTK's `meteor_score` (alpha 0.9, beta 3, gamma 0.5; lower-cased words matched exactly, then by
  Porter stem, then as WordNet synonyms). The synonym stage needs NLTK's WordNet data, which no Python package
  ships: it is used when the operator has installed it (`python -m nltk.downloader wordnet`, or `NLTK_DATA`), and
  skipped otherwise (exact and stem matches only).
- `rouge_1` … `rouge_5`, `rouge_l`: Google's `rouge-score` package, F-measure of n-gram overlap (longest common
  subsequence for `rouge_l`), without stemming. Words are lower-cased runs of letters and digits of any script
  (the package's default tokenizer keeps only `a-z0-9`, which would score every non-Latin text 0; on ASCII text
  the two agree; text without spaces, such as Chinese, is one word per run).
- `cosine`: the cosine similarity of the two texts' embeddings, with the embedding function the caller gives;
  there is none by default, and a grader asking for it is refused when it is validated.

Words for BLEU, GLEU and METEOR come from NLTK's Treebank-style word tokenizer (`NLTKWordTokenizer`, no data
files needed); BLEU and GLEU compare them case-sensitively, METEOR lower-cased. The libraries are
imported on first use, so importing the package stays cheap.

Identical word sequences (two empty ones included) score 1 on every n-gram metric, and an empty one against a
non-empty one 0: the formulas alone would give an exact one-word match 0.5 on METEOR (its fragmentation penalty)
and 0 on ROUGE-2 (no bigrams), which would be wrong as a reward.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

NGRAM_METRICS = ("bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l")
METRICS = ("cosine", "fuzzy_match", *NGRAM_METRICS)
"""Every `evaluation_metric` of OpenAI's `TextSimilarityGrader`."""

Embedder = Callable[[Sequence[str]], Sequence[Sequence[float]]]
"""Texts in, one embedding vector per text out (for `cosine`)."""

_WORD = re.compile(r"[^\W_]+")


def similarity(metric: str, text: str, reference: str, *, embed: Embedder | None = None) -> float:
    """`text` scored against `reference` by `metric`, from 0 to 1.

    Raises:
        ValueError: an unknown metric, or `cosine` without an embedder.
    """
    if metric == "fuzzy_match":
        return fuzzy_match(text, reference)
    if metric == "cosine":
        if embed is None:
            raise ValueError("the cosine metric needs an embedding model")
        return cosine(text, reference, embed)
    if metric.startswith("rouge_"):
        if _UnicodeWords.tokenize(text) == _UnicodeWords.tokenize(reference):
            return 1.0
        return rouge(metric, text, reference)
    if metric in ("bleu", "gleu", "meteor"):
        hypothesis, target = words(text), words(reference)
        if hypothesis == target:
            return 1.0
        if not hypothesis or not target:
            return 0.0
        return {"bleu": bleu, "gleu": gleu, "meteor": meteor}[metric](hypothesis, target)
    raise ValueError(f"unknown metric {metric!r}")


def fuzzy_match(text: str, reference: str) -> float:
    """The `fuzz.ratio` of rapidfuzz, scaled to 0-1."""
    from rapidfuzz import fuzz

    return fuzz.ratio(text, reference) / 100.0


def words(text: str) -> list[str]:
    """Treebank-style word tokens (NLTK's `NLTKWordTokenizer`)."""
    return _word_tokenizer().tokenize(text)


@functools.cache
def _word_tokenizer() -> Any:
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def bleu(hypothesis: list[str], reference: list[str]) -> float:
    """Sentence BLEU (4-grams, auto-reweighed for short inputs, smoothing method 1)."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    score = sentence_bleu([reference], hypothesis, smoothing_function=SmoothingFunction().method1, auto_reweigh=True)
    return float(score)


def gleu(hypothesis: list[str], reference: list[str]) -> float:
    """Google's sentence GLEU over 1- to 4-grams."""
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference], hypothesis, min_len=1, max_len=4))


def meteor(hypothesis: list[str], reference: list[str]) -> float:
    """METEOR with NLTK's defaults; WordNet synonyms only where its data is installed."""
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference], hypothesis, wordnet=_wordnet()))


class _NoSynonyms:
    """Stands in for WordNet where its data is not installed: no word has a synonym."""

    @staticmethod
    def synsets(word: str) -> list[Any]:
        return []


@functools.cache
def _wordnet() -> Any:
    """NLTK's WordNet reader if its data is installed, else `_NoSynonyms`."""
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        return _NoSynonyms()
    return wordnet


class _UnicodeWords:
    """rouge-score's tokenizer interface: lower-cased runs of letters and digits of any script."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return _WORD.findall(text.lower())


@functools.cache
def _rouge_scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=False, tokenizer=_UnicodeWords())


def rouge(metric: str, text: str, reference: str) -> float:
    """ROUGE-N (n = 1…5) or ROUGE-L F-measure, by rouge-score."""
    kind = "rougeL" if metric == "rouge_l" else "rouge" + metric.removeprefix("rouge_")
    return float(_rouge_scorer(kind).score(reference, text)[kind].fmeasure)


def cosine(text: str, reference: str, embed: Embedder) -> float:
    """The cosine similarity of the two embeddings, clamped to 0-1."""
    first, second = embed([text, reference])
    dot = sum(a * b for a, b in zip(first, second, strict=True))
    norms = math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second))
    if norms == 0:
        return 0.0
    return min(1.0, max(0.0, dot / norms))
