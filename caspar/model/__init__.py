"""The model: the inputs' scaling, the trees, the Keras layers and network."""
