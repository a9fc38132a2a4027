"""Dataset readers, synthetic data, audio and feature code, TFDS builders and tf.data pipeline."""
