"""The serving process's collector set-up: start-up objects frozen, full collections rarer."""

from __future__ import annotations

import gc

from gateway import gc_tuning


def test_tune_freezes_what_is_loaded_and_spaces_out_full_collections() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        assert gc.get_freeze_count() == 0
        gc_tuning.tune()
        assert gc.get_freeze_count() > 0
        young, middle, full = gc.get_threshold()
        assert (young, middle) == before[:2]
        assert full == gc_tuning.FULL_AFTER > before[2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
