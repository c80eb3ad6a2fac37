-- How each segment's initial noise is drawn from its seed (shared/media/noise.py). Segments made
-- before the choice existed were rendered with the pipeline's own noise: they stay 'native', and
-- so do their upscales, which copy the recipe.
ALTER TABLE segments ADD COLUMN noise TEXT NOT NULL DEFAULT 'native'
    CHECK (noise IN ('consistent-v1', 'native'));
