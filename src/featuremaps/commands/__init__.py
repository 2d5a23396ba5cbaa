"""The commands: each wires the stages together for one job and is one public function.

``run`` (:func:`visualize`), ``stats`` (:func:`collect_stats`), ``ablate`` (:func:`ablate`),
``locate`` (:func:`locate`, :func:`draw_overlay`) and ``layers`` (:func:`list_layers`). The
command line (:mod:`featuremaps.cli`) parses options and calls these; nothing here parses text.
"""
