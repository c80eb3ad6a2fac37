-- Cost bounds an admin sets per project (NULL: no bound): segments per scene, frames × steps per
-- segment (what a segment's render grows with), and the highest tier an artist may submit or
-- upscale to. Refused at submission, with the bound named (shared.domain.limits).
ALTER TABLE projects
    ADD COLUMN max_segments_per_scene INTEGER CHECK (max_segments_per_scene > 0),
    ADD COLUMN max_frame_steps INTEGER CHECK (max_frame_steps > 0),
    ADD COLUMN max_artist_tier_id BIGINT REFERENCES resolution_tiers(id) ON DELETE RESTRICT;
