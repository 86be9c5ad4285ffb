"""Golden tests of the ASR metrics: corpus WER counts, empty texts, Whisper normalisation, real-time factor."""

from __future__ import annotations

import jiwer
import pytest

from tasks.asr_metrics import corpus_wer, format_alignments, normalise_text, real_time_factor, wer_report

# Three utterances counted by hand:
#   "the cat sat on the mat" -> "the cat sit on mat":          S=1 (sat/sit), D=1 (the), N=6
#   "a b c d"                -> "a b x c d":                   I=1 (x), N=4
#   "turn on the light"      -> "turn of the lights please":   S=2 (on/of, light/lights), I=1 (please), N=4
REFERENCES = ["the cat sat on the mat", "a b c d", "turn on the light"]
HYPOTHESES = ["the cat sit on mat", "a b x c d", "turn of the lights please"]


def test_golden_corpus_wer_counts():
    report = wer_report(HYPOTHESES, REFERENCES, ids=["u1", "u2", "u3"], normalise=False)
    assert (report["S"], report["D"], report["I"], report["N"]) == (3, 1, 2, 14)
    assert report["wer"] == pytest.approx(6 / 14)
    assert report["num_utterances"] == 3
    per_utt = [(u["id"], u["S"], u["D"], u["I"], u["N"]) for u in report["utterances"]]
    assert per_utt == [("u1", 1, 1, 0, 6), ("u2", 0, 0, 1, 4), ("u3", 2, 0, 1, 4)]
    assert [u["wer"] for u in report["utterances"]] == pytest.approx([2 / 6, 1 / 4, 3 / 4])


def test_totals_agree_with_jiwer_on_the_whole_corpus():
    report = wer_report(HYPOTHESES, REFERENCES, normalise=False)
    output = jiwer.process_words(REFERENCES, HYPOTHESES)
    assert (report["S"], report["D"], report["I"]) == (output.substitutions, output.deletions, output.insertions)
    assert report["wer"] == pytest.approx(output.wer)


def test_corpus_wer_is_not_the_mean_of_utterance_wers():
    # A one-word utterance wrong and a nine-word one right: corpus 1/10, mean of rates 1/2.
    references = ["yes", "the quick brown fox jumps over the lazy dog"]
    hypotheses = ["no", "the quick brown fox jumps over the lazy dog"]
    report = wer_report(hypotheses, references, normalise=False)
    mean = sum(u["wer"] for u in report["utterances"]) / len(report["utterances"])
    assert report["wer"] == pytest.approx(0.1)
    assert mean == pytest.approx(0.5)
    assert corpus_wer(hypotheses, references, normalise=False) == pytest.approx(0.1)


def test_alignments_are_drawn_per_utterance():
    report = wer_report(HYPOTHESES, REFERENCES, ids=["u1", "u2", "u3"], normalise=False)
    first = report["utterances"][0]["alignment"].splitlines()
    assert first[0].startswith("REF: the cat sat on the mat")
    assert first[1].startswith("HYP: the cat sit on ***")
    assert "S" in first[2] and "D" in first[2]
    text = format_alignments(report)
    assert text.startswith("WER 0.4286 = (S 3 + D 1 + I 2) / N 14")
    assert "id: u3" in text and "please" in text


def test_empty_references_and_hypotheses():
    report = wer_report(["hello world", "", ""], ["", "a b", ""], normalise=False)
    inserted, deleted, empty = report["utterances"]
    assert (inserted["I"], inserted["N"], inserted["wer"]) == (2, 0, 2.0)  # insertions against nothing: errors / 1
    assert (deleted["D"], deleted["N"], deleted["wer"]) == (2, 2, 1.0)
    assert (empty["S"] + empty["D"] + empty["I"], empty["N"], empty["wer"]) == (0, 0, 0.0)
    assert report["wer"] == pytest.approx(4 / 2)
    assert wer_report([""], [""], normalise=False)["wer"] == 0.0
    assert wer_report(["oh no"], [""], normalise=False)["wer"] == 2.0


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        wer_report(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="1 ids for 2 references"):
        wer_report(["a", "b"], ["a", "b"], ids=["x"], normalise=False)
    with pytest.raises(TypeError, match="hypothesis 0 is NoneType"):
        wer_report([None], ["a"], normalise=False)


def test_real_time_factor():
    assert real_time_factor(2.0, 8.0) == 0.25
    with pytest.raises(ValueError, match="audio_seconds must be positive, got 0"):
        real_time_factor(1.0, 0)
    with pytest.raises(ValueError, match="decode_seconds"):
        real_time_factor(-1.0, 3.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Twenty five", "25"),
        ("two hundred and five", "205"),
        ("The Colour of the Centre!", "the color of the center"),
        ("Hello,   World.", "hello world"),
        ("Uh, I've organised the theatre", "i have organized the theater"),
        ("it costs five dollars", "it costs $5"),
        ("hmm", ""),
        # OpenAI's rules, not the whisper-normalizer package's additions
        ("I kinda dunno cause", "i kinda dunno cause"),
        ("gonna wanna", "going to want to"),
    ],
)
def test_whisper_normalisation(text, expected):
    pytest.importorskip("whisper_normalizer", reason="pip install whisper-normalizer==0.1.12")
    assert normalise_text(text) == expected


def test_normalised_wer_ignores_spelling_numbers_case_and_punctuation():
    pytest.importorskip("whisper_normalizer", reason="pip install whisper-normalizer==0.1.12")
    report = wer_report(["the color is 25 uh"], ["The colour is twenty-five."])
    assert report["wer"] == 0.0 and report["N"] == 4 and report["normalised"]
    assert report["utterances"][0]["reference"] == "the color is 25"


def test_normaliser_matches_the_transformers_port():
    pytest.importorskip("whisper_normalizer", reason="pip install whisper-normalizer==0.1.12")
    english = pytest.importorskip("transformers.models.whisper.english_normalizer")
    import json
    from importlib.resources import files

    spelling = json.loads(files("whisper_normalizer").joinpath("normalizers/english.json").read_text())
    reference = english.EnglishTextNormalizer(spelling)
    for text in ["Mr. Smith paid $3.50 for 2 colours", "one thousand two hundred and thirty four", "I'd've gone"]:
        assert normalise_text(text) == reference(text)
