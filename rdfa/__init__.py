"""Regional Deep Feature Aggregation (Jeong, Choo, Seo, Cho) as pure array functions.

One module per concept of the paper; no file I/O here (that lives in
``rdfa.io``). Equation numbers refer to ``../shared/paper.md``.
"""
