"""Shared fixtures of the generation tests."""

import logging

import pytest


@pytest.fixture(autouse=True)
def quiet_transformers():
    """transformers' "falling back to the reference implementation" notices, silenced for each test."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)
