"""The atlas's built-in steps, one module per analysis, each registering itself with `@atlas_step`.

A step runs its analysis through the analysis's public entry point, imported when the step runs: an analysis
missing from this install, or a model it does not support, raises, and the atlas records the step's fields as
null with the reason. Each step keeps its result in `ctx.outputs`, written as its own run folder. Adding a
module here adds a step; nothing lists them.
"""
