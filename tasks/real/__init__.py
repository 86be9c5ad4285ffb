"""Real data sets read from pinned registry artefacts (multimodal/assets.py): readers and split builders.

Importing the package registers their assets (``mmdiff assets list``)."""

from tasks.real import easy_vqa, peptide_mhc, speech_recordings, tcr_epitope  # noqa: F401  (register their assets)
