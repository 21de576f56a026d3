"""The CLI's stages, one file each: a `...Config` dataclass and the function that runs it.

Each stage takes a typed config and writes a folder; stages talk only through files in a run
folder (`baton_trainer.layout`), so any stage can be rerun, resumed, or run on another machine.
The CLI's table of stages is `baton_trainer.__main__.STAGES`: this package imports none of them,
so a module that runs one stage (online rounds, the evaluation's clips) imports only that one.
"""
