-- An upscale whose source media is gone (expired, deleted) still renders; the segment records why
-- it has no similarity score instead of failing for good.
ALTER TABLE segments ADD COLUMN no_similarity_reason TEXT;
