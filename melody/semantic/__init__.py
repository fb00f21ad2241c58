"""The semantic stack of MeLoDy (§3.1): the semantic LM over [MuLan tokens | semantic tokens] (`lm.py`)
and its samplers (`sampling.py`); the tokenizer (SSL encoder + k-means) joins them here."""
