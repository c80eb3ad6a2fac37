"""The rules: tiers, dimensions, recipes, scenes, the lifecycle of every status, upscale, delivery,
similarity. No Kafka, AWS SDK, torch or web framework here; of our code only `events` and
`shared.errors` (tests/unit/test_boundaries.py)."""
