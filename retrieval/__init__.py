"""The embedded async hybrid retriever (FAISS + MongoDB graph + Redis cache).

Not built yet: it arrives with the retrieval issue. The package exists now only
because the project layout (DESIGN.md) is fixed from the first commit.
"""
