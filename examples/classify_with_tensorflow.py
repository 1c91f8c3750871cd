"""Classify one image with an exported run using nothing but TensorFlow (no tlearn, no Keras
model code): this is how a server or another program uses the SavedModel.

    python examples/classify_with_tensorflow.py models/weather photo.jpg
"""

import sys
from pathlib import Path

import tensorflow as tf

run_dir, image_path = Path(sys.argv[1]), sys.argv[2]
labels = (run_dir / "labels.txt").read_text().splitlines()
serve = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]

# Raw RGB pixels 0-255 of the whole image, any size: resizing and preprocessing are inside the
# model, which then says what `tlearn predict` says. Unlike tlearn's decode (Pillow), TensorFlow
# ignores EXIF orientation, keeps the colour under transparent pixels (tlearn: white) and keeps
# the top 8 bits of 16-bit images (tlearn: scaled by the brightest pixel).
image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
probabilities = serve(pixels=tf.cast(image, tf.float32)[tf.newaxis])["output_0"][0].numpy()

for index in probabilities.argsort()[::-1]:
    print(f"{labels[index]:>12}  {probabilities[index]:.3f}")
