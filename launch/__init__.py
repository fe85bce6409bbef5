"""Where runs go: :mod:`launch.runner` runs batches of config files in this process."""
