"""The MRML glue of the MemorizationIndex module, split by role.

Slicer loads every .py file directly in a scripted module's folder as a module, so
everything besides MemorizationIndex.py lives in this package below the module folder:

- logic.py         MemorizationIndexSceneLogic: bank, scoring and display on a scene passed in
- volumes.py       volume nodes <-> SimpleITK images, volumes loaded from the engine's reader
- placement.py     pure geometry: slice frames, the match placement matrix, poses of rows
- nodes.py         the slice table (row <-> slice mapping) and the MI plot nodes
- views.py         slice views: overlay, side by side, layout, off-screen rendering
- headless.py      a scene set up as Slicer's application sets one up (slicer-core, scripts)
- dependencies.py  which engine packages are missing, and installing them in Slicer
- process.py       the child process: a plain-Python runner (JSON lines, poll, cancel) and
                   the child's entry point
- engine.py        every call into the engine (MemorizationIndexLib), in one place

Nothing is imported here: the child process imports only process.py and engine.py.
"""
