"""Dataset adapters: what is particular to one dataset (its label sources, meta files, synthetic archives)."""
