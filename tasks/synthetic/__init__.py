"""Embedded default data sets, generated offline and deterministically (shapes VQA, spoken corpus, proteome)."""
