"""Evaluation: the measures (metrics: likelihood summaries and mode statistics; quality: FID, KID,
precision/recall, density/coverage, Parzen), the feature networks they run on (networks: each image
dataset's evaluator classifier; inception: the standard FID Inception-v3), and the protocol that
decides sample counts and which measures apply (protocol)."""
