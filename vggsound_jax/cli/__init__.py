"""The commands users run (`vggsound-train`, ...): flags and messages, no pipeline logic.

Each module has a `run()` entry point, named in pyproject.toml's [project.scripts]; the files
in scripts/ and converters/ call the same functions.
"""
