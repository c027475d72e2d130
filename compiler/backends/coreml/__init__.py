"""Core ML: MIL emission (:mod:`.emit`), packages written reproducibly and checked (:mod:`.package`),
weight compression (:mod:`.compress`), stateful programs (:mod:`.state`) and multifunction merging
(:mod:`.multifunction`)."""
