"""The commands: each wires the stages together for one job, as one public function and one
command of the command line.

``run`` (:func:`visualize`), ``stats`` (:func:`collect_stats`), ``ablate`` (:func:`ablate`),
``locate`` (:func:`locate`, :func:`draw_overlay`), ``layers`` (:func:`list_layers`) and ``slide``
(:func:`slide_maps`). Each command module ends with its command line: its options and the call
that turns them into arguments of its public function and prints the results, declared as its
``COMMAND``; :mod:`featuremaps.cli` lists the commands. The public functions parse no text.

Shared: :mod:`~featuremaps.commands.common` resolves the model and inputs a caller passes;
:mod:`~featuremaps.commands.cli_common` holds the option groups, option parsers and loading that
every command line uses. Split out of a command: :mod:`~featuremaps.commands.run_drawing` (one
record drawn) and :mod:`~featuremaps.commands.slide_outputs` (a slide run's files).
"""
