"""What is decided on the validation split and stored with the model: the decision threshold and the
post-processing rule (as nnU-Net keeps post-processing its own phase). Train decides; evaluate and
bts-predict apply what the model file says."""
