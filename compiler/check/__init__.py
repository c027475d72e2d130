"""Checking what a build made: output metrics and per-op divergence (:mod:`.metrics`), the closed
loop behind ``precision="mixed"`` (:mod:`.calibrate`), the ANE placement report (:mod:`.report`) and
``tlc lint`` (:mod:`.lint`)."""
