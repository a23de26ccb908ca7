"""Places365-Standard: the facts torchvision's `Places365` reads (facts.py), the synthetic archives
(synth.py), the untrusted file lists (labels.py) and the two archive shapes it uses, *tree* for train
and *flat with labels* for val (tree.py). README.md says what the real archives hold."""
