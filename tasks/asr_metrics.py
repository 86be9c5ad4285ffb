"""Speech recognition metrics: Whisper English normalisation, corpus WER with alignments, real-time factor.

Follows the WER convention of the Whisper-LLaDA paper (PAPERS.md section 4): both sides go through the English
text normaliser OpenAI Whisper uses for its English WER (case and punctuation removed, British spellings mapped to
American, spelled numbers to digits, "twenty five" -> "25", fillers such as "uh" and "hmm" dropped, contractions
expanded), then WER = (S + D + I) / N is summed over the whole corpus; it is not the mean of per-utterance WERs,
which over-weights short utterances. The normaliser is OpenAI's ``EnglishTextNormalizer`` as ported to
transformers (``transformers.models.whisper.english_normalizer``), given OpenAI's British-to-American spelling
table (``english.json``, which the ``whisper-normalizer`` package ships byte for byte). That port agrees with
OpenAI's own module on every one of 20,027 test strings (benchmarks/RESULTS.md); the ``whisper-normalizer``
package's ``EnglishTextNormalizer`` does not: it adds rules of its own ("kinda" -> "kind of", "sorta",
"dunno", "cause" -> "because") that change the WER of conversational speech, so it is not used. The alignments
and counts come from ``jiwer``.

Empty texts: an utterance whose (normalised) reference is empty has N = 0 and each hypothesis word counts as an
insertion; its own rate is errors / max(N, 1), as in jiwer. The corpus rate is likewise errors / max(N, 1), so a
corpus without reference words scores its insertion count (0.0 when the hypotheses are empty too).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

_INSTALL_HINT = "pip install 'mmdiff[audio]' (transformers and whisper-normalizer)"


@functools.lru_cache(maxsize=1)
def _english_normaliser() -> Callable[[str], str]:
    import json
    from importlib.resources import files

    try:
        from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

        spelling = json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text())
    except ImportError as error:  # a clear message beats a bare ModuleNotFoundError deep in an eval run
        raise ImportError(
            f"Whisper English normalisation needs transformers and whisper-normalizer: {_INSTALL_HINT}"
        ) from error
    return EnglishTextNormalizer(spelling)


def normalise_text(text: str) -> str:
    """Whisper's English normalisation: ``"Twenty-five Colours!"`` -> ``"25 colors"``.

    Args:
        text: a reference or hypothesis transcript.

    Returns:
        Lower-case words separated by single spaces (possibly empty, for instance for ``"uh"``).
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a transcript string, got {type(text).__name__}: {text!r}")
    return _english_normaliser()(text)


def _alignment_text(output) -> str:
    import jiwer

    # jiwer draws REF / HYP lines and an S/D/I marker line under a "=== SENTENCE 1 ===" heading; drop the heading.
    lines = jiwer.visualize_alignment(output, show_measures=False, skip_correct=False).splitlines()
    lines = [line.rstrip() for line in lines if line.strip() and not line.startswith("=== SENTENCE")]
    return "\n".join(lines) if lines else "REF: \nHYP: "


def wer_report(
    hypotheses: Sequence[str],
    references: Sequence[str],
    ids: Sequence[str] | None = None,
    normalise: bool = True,
) -> dict:
    """Corpus word error rate with per-utterance counts and alignments.

    Args:
        hypotheses: recognised transcripts, one per utterance.
        references: ground-truth transcripts, same order.
        ids: utterance names for the per-utterance entries; ``"0"``, ``"1"``, ... by default.
        normalise: apply Whisper's English normaliser to both sides first. With False, texts are only split on
            whitespace (case and punctuation then count).

    Returns:
        ``{"wer", "S", "D", "I", "N", "num_utterances", "normalised", "utterances"}`` where ``wer`` is
        (S + D + I) / max(N, 1) over the corpus and ``utterances`` lists, per utterance, ``{"id", "reference",
        "hypothesis", "S", "D", "I", "N", "wer", "alignment"}`` with the texts as scored and a three-line REF / HYP /
        error-marker alignment drawn by jiwer.
    """
    import jiwer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    ids = [str(i) for i in range(len(references))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(references):
        raise ValueError(f"{len(ids)} ids for {len(references)} references")
    for name, texts in (("hypothesis", hypotheses), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name} {ids[i]} is {type(text).__name__}, not str: {text!r}")
    prepare = normalise_text if normalise else (lambda text: " ".join(text.split()))
    utterances, totals = [], {"S": 0, "D": 0, "I": 0, "N": 0}
    for uid, hyp, ref in zip(ids, hypotheses, references, strict=True):
        ref, hyp = prepare(ref), prepare(hyp)
        output = jiwer.process_words(ref, hyp)
        counts = {"S": output.substitutions, "D": output.deletions, "I": output.insertions}
        counts["N"] = output.hits + output.substitutions + output.deletions
        for key, value in counts.items():
            totals[key] += value
        errors = counts["S"] + counts["D"] + counts["I"]
        utterances.append(
            {"id": uid, "reference": ref, "hypothesis": hyp}
            | counts
            | {"wer": errors / max(counts["N"], 1), "alignment": _alignment_text(output)}
        )
    errors = totals["S"] + totals["D"] + totals["I"]
    return {
        "wer": errors / max(totals["N"], 1),
        **totals,
        "num_utterances": len(utterances),
        "normalised": normalise,
        "utterances": utterances,
    }


def corpus_wer(hypotheses: Sequence[str], references: Sequence[str], normalise: bool = True) -> float:
    """Corpus WER, (S + D + I) / N summed over all utterances; see ``wer_report``."""
    return wer_report(hypotheses, references, normalise=normalise)["wer"]


def format_alignments(report: dict) -> str:
    """The per-utterance alignments of a ``wer_report`` as one text block (to write next to the hypotheses)."""
    blocks = [
        f"id: {u['id']}  S={u['S']} D={u['D']} I={u['I']} N={u['N']}  wer={u['wer']:.3f}\n{u['alignment']}"
        for u in report["utterances"]
    ]
    head = f"WER {report['wer']:.4f} = (S {report['S']} + D {report['D']} + I {report['I']}) / N {report['N']}"
    return "\n\n".join([head, *blocks]) + "\n"


def real_time_factor(decode_seconds: float, audio_seconds: float) -> float:
    """Decoding time per second of audio: below 1 is faster than real time.

    Args:
        decode_seconds: wall-clock time spent recognising (>= 0).
        audio_seconds: total duration of the audio recognised (> 0).
    """
    if audio_seconds <= 0:
        raise ValueError(f"audio_seconds must be positive, got {audio_seconds}")
    if decode_seconds < 0:
        raise ValueError(f"decode_seconds must be >= 0, got {decode_seconds}")
    return decode_seconds / audio_seconds
