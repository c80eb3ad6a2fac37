-- Upscales: one target scene per source scene and tier, enforced here so that repeated or
-- concurrent requests (two clicks, a redelivered event, two processes) give one target scene.
CREATE UNIQUE INDEX scenes_one_upscale_per_tier ON scenes (upscaled_from_scene_id, resolution_tier_id)
    WHERE upscaled_from_scene_id IS NOT NULL;

-- Quality comparison of an upscaled segment with its source: the target's frames downscaled to
-- the source size against the source's frames (mean over frames), and a side-by-side image.
ALTER TABLE segments
    ADD COLUMN ssim DOUBLE PRECISION CHECK (ssim BETWEEN -1 AND 1),
    ADD COLUMN psnr DOUBLE PRECISION CHECK (psnr >= 0),
    ADD COLUMN comparison_key TEXT,
    ADD COLUMN similarity_flagged BOOLEAN;
