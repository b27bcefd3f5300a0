"""`avert batch`: a JSON Lines file of native-API requests rendered to PNGs and a manifest, locally or on Ray.

jobs (read and validate every line up front) -> render (requests to images, several requests per UNet batch)
-> storage + manifest (PNG files and one JSON line per request, resumable) -> local / on_ray (who runs it).
"""

DEFAULT_BATCH_IMAGES = 8  # images per UNet batch; here so that the command's parser need not import the engine
