"""medsynth's own subcommands (``synthesize``, ``evaluate``, ``masks``, ``label``, ``dataset``, ``phantom``, ``demo``, ``reflow``).

One module per command, named after it: ``build_parser()`` and ``main(argv) -> int`` (0 when done,
2 for bad input, with the error on stderr). A command parses its flags, calls typed library
functions (:mod:`medsynth.synthesis`, :mod:`medsynth.evaluate`, :mod:`medsynth.masks`,
:mod:`medsynth.autolabel`, :mod:`medsynth.data.phantom`, :mod:`medsynth.demo`) and prints; the
library never imports a command. :mod:`medsynth.cli` dispatches to them.
"""

#: ``medsynth <command>`` -> its module under ``medsynth.commands``.
COMMAND_MODULES = {
    "synthesize": "medsynth.commands.synthesize",
    "evaluate": "medsynth.commands.evaluate",
    "phantom": "medsynth.commands.phantom",
    "demo": "medsynth.commands.demo",
    "masks": "medsynth.commands.masks",
    "label": "medsynth.commands.label",
    "dataset": "medsynth.commands.dataset",
    "reflow": "medsynth.commands.reflow",
}

__all__ = ["COMMAND_MODULES"]
