"""Masked-diffusion math: schedules, corruption, the loss and the likelihood bound. Pure functions."""
