"""FLYT ("Filter Like You Test", Shechter & Carmon, 2025): a scorer of image-text pairs trained
so that a CLIP model stepped on the pairs it weights does better on a downstream task."""
