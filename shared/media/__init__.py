"""The diffusers side: which model a job runs, the tiny offline model, loading a pipeline and
rendering a segment, and video files (encode, poster, decode, probe). torch and diffusers are
imported only inside the functions that need them."""
