"""The compiler driver: options checked once (:mod:`.options`), model inputs (:mod:`.inputs`), the
build plan (:mod:`.plan`), the compile cache (:mod:`.cache`, :mod:`.cache_key`), the compiled model and
its single-signature build (:mod:`.model`, :mod:`.single`), several shapes (:mod:`.multifunction`),
language models (:mod:`.lm`), ``@tlc.compile`` (:mod:`.specialize`) and the tools built on them
(:mod:`.verify`, :mod:`.bench`, :mod:`.profile`).

(Not ``tlc.build``: that name is the public function, and a subpackage would shadow it.)"""
