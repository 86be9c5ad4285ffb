"""VQAv2 answer processing and accuracy, rule for rule as the official evaluation script (vqaEval.py).

The official script (Antol et al. 2015; Goyal et al. 2017) scores a prediction against the human
answers of one question. Two versions of it are in use, and both are here (`official_accuracy`'s
`version`):

``2021`` (the default: the script as fixed in March 2021, GT-Vision-Lab/VQA commit a013f00 of
PythonEvaluationTools/vqaEvaluation/vqaEval.py, the version lmms-eval follows):

1. Newlines and tabs become spaces and outer whitespace is stripped, in the prediction and in every
   human answer.
2. When the human answers disagree (more than one distinct string), each of them and the prediction
   go through `process_punctuation` then `process_digit_article`; when they are unanimous nothing is
   processed (the maintainers' reason: answers that read text in the image stay verbatim), so
   ``"Yes."`` against ten ``"yes"`` scores 0.

``2016`` (the script from 2016 to March 2021, e.g. commit c4e6a0e, which earlier published numbers
used):

1. The prediction: whitespace as above, then `process_punctuation`, then `process_digit_article`,
   always.
2. The human answers are left as they are when all of them are the same string; otherwise each one
   goes through `process_punctuation` only.

Both: accuracy is, for each human answer, min(1, #other answers equal to the prediction / 3), averaged
over all of them (leave-one-out averaging, for any number of answers).

`process_punctuation`: each mark of `PUNCTUATION` is deleted when it touches a space anywhere in the
answer (``"red ,blue"``), or when the answer holds a digit-comma-digit (``"1,000"``), and is replaced
by a space otherwise (``"black-and-white"`` -> ``"black and white"``); the apostrophe and the colon
are not in the set. Then every period not followed by a digit is deleted; the script passes
``re.UNICODE`` (= 32) where `re.sub` takes its count, so at most 32 periods go, and we do the same.
`process_digit_article`: lower-case, split on whitespace, number words zero..ten and "none" to
digits, articles a/an/the dropped, contractions missing their apostrophe restored from
`CONTRACTIONS`. The script's capitalised keys ("Im", "Ive", "Id've", "I'dve") can never match a
lower-cased word, so "im" stays "im" there and here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# The official table, alphabetised. Some entries are odd ("somebody'd" -> "somebodyd", identities such as
# "let's" -> "let's") and are kept, since the official accuracy depends on them.
CONTRACTIONS = dict(
    line.split(" ", 1)
    for line in """\
aint ain't
arent aren't
cant can't
couldve could've
couldnt couldn't
couldn'tve couldn't've
couldnt've couldn't've
didnt didn't
doesnt doesn't
dont don't
hadnt hadn't
hadnt've hadn't've
hadn'tve hadn't've
hasnt hasn't
havent haven't
hed he'd
hed've he'd've
he'dve he'd've
hes he's
howd how'd
howll how'll
hows how's
Id've I'd've
I'dve I'd've
Im I'm
Ive I've
isnt isn't
itd it'd
itd've it'd've
it'dve it'd've
itll it'll
let's let's
maam ma'am
mightnt mightn't
mightnt've mightn't've
mightn'tve mightn't've
mightve might've
mustnt mustn't
mustve must've
neednt needn't
notve not've
oclock o'clock
oughtnt oughtn't
ow's'at 'ow's'at
'ows'at 'ow's'at
'ow'sat 'ow's'at
shant shan't
shed've she'd've
she'dve she'd've
she's she's
shouldve should've
shouldnt shouldn't
shouldnt've shouldn't've
shouldn'tve shouldn't've
somebody'd somebodyd
somebodyd've somebody'd've
somebody'dve somebody'd've
somebodyll somebody'll
somebodys somebody's
someoned someone'd
someoned've someone'd've
someone'dve someone'd've
someonell someone'll
someones someone's
somethingd something'd
somethingd've something'd've
something'dve something'd've
somethingll something'll
thats that's
thered there'd
thered've there'd've
there'dve there'd've
therere there're
theres there's
theyd they'd
theyd've they'd've
they'dve they'd've
theyll they'll
theyre they're
theyve they've
twas 'twas
wasnt wasn't
wed've we'd've
we'dve we'd've
weve we've
werent weren't
whatll what'll
whatre what're
whats what's
whatve what've
whens when's
whered where'd
wheres where's
whereve where've
whod who'd
whod've who'd've
who'dve who'd've
wholl who'll
whos who's
whove who've
whyll why'll
whyre why're
whys why's
wont won't
wouldve would've
wouldnt wouldn't
wouldnt've wouldn't've
wouldn'tve wouldn't've
yall y'all
yall'll y'all'll
y'allll y'all'll
yall'd've y'all'd've
y'alld've y'all'd've
y'all'dve y'all'd've
youd you'd
youd've you'd've
you'dve you'd've
youll you'll
youre you're
youve you've""".splitlines()
)
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # the script's "(?!<=\d)(\.)(?!\d)": its first group is a no-op lookahead
_MAX_PERIODS = 32  # re.UNICODE, passed as re.sub's count


def process_punctuation(text: str) -> str:
    """Delete or space out punctuation, then delete periods that are not decimal points (module docstring)."""
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # the test reads the original text, the replacement the running one, as the script does
        out = out.replace(mark, "" if delete or f"{mark} " in text or f" {mark}" in text else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Lower-case; number words to digits; articles dropped; contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official processing of an answer ("Two dogs!" -> "2 dogs", "a dog." -> "dog")."""
    return process_digit_article(process_punctuation(_clean(answer)))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def official_accuracy(prediction: str, human_answers: Sequence[str], version: str = "2021") -> float:
    """VQA accuracy of one prediction against a question's human answers, as the official script.

    Args:
        prediction: the model's answer (processed here).
        human_answers: the annotators' answers (10 in VQAv2).
        version: ``2021`` (the current script) or ``2016`` (the script before March 2021); module docstring.

    Returns:
        The mean over annotators i of min(1, #{j != i : answer_j == prediction} / 3).
    """
    if len(human_answers) == 0:
        raise ValueError("no human answers to score against")
    if version == "2021":
        pred, answers = _clean(prediction), [_clean(a) for a in human_answers]
        if len(set(answers)) > 1:
            answers = [process_digit_article(process_punctuation(a)) for a in answers]
            pred = process_digit_article(process_punctuation(pred))
    elif version == "2016":
        pred, answers = normalize_answer(prediction), list(human_answers)
        if len(set(answers)) > 1:
            answers = [process_punctuation(a) for a in answers]
    else:
        raise ValueError(f"unknown VQA evaluation version {version!r}; known: 2021, 2016")
    agree = [a == pred for a in answers]
    total = sum(agree)
    # leaving out annotator i leaves total - agree[i] agreeing annotators among the others
    return sum(min(1.0, (total - a) / 3) for a in agree) / len(agree)
