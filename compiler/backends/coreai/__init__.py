"""Apple's Core AI: ``.aimodel`` emission from tlc's IR (:mod:`.emit`)."""
