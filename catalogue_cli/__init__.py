"""The `indexer` and `search` commands: a thin layer that parses options, calls the libraries, prints.

Why a package of its own: some commands need both libraries. `indexer feedback`
records a confirmed photo in the feedback store (indexer) and makes it a store
view, which the search pipeline re-embeds (search); `indexer sync --reindex`
restores those views the same way. Sitting on top of both keeps the libraries'
dependencies one-way: `search` imports `indexer`, `indexer` imports neither
`search` nor this package (tests/test_architecture.py checks it).
"""
