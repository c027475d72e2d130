"""Helpers above the core that every higher layer shares: file staging (:mod:`.files`), progress
(:mod:`.progress`), coremltools deployment targets (:mod:`.coreml`), test helpers (:mod:`.testing`)."""
