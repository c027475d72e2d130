"""What tlc writes: Core ML programs and packages (:mod:`.coreml`), Core AI assets (:mod:`.coreai`) and
the bundle directory that holds them beside tlc's fallback segments (:mod:`.bundle`). Backends take
decided values (precision, deployment target, compression mode) and do not check options again."""
