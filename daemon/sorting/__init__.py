"""Stage 2, sorting: one batch of pictures from their bytes to their journal lines.

In the order a picture meets them: `read` (read once, hash, decode through `preprocess`),
`classify` (the ONNX model, its `manifest` and `thresholds`), `decide`, `copies` (atomic,
content-addressed copies), `journal` and `index` (what the library holds), `recovery` (a lost
journal recorded again), `library` (all of that as one run holds it, and its lock), and
`stages`: the batch functions every driver runs.
"""
