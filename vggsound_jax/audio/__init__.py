"""Audio: decoding any file to 16 kHz mono int16 as the ffmpeg command line does (`decode.py`,
`ffmpeg_compat.py`), and the front ends from a waveform to the network's input (`spectrogram.py`
for the ResNets, `vggish_frontend.py` for VGGish).

Rule: audio knows nothing of models, data sets, training or serving. Decoding imports no jax (the
OpenVINO path and the data builds use it); the front ends are jnp functions, each fact of the
original pipeline a named constant. This `__init__` imports nothing, so that importing the
decoder stays light.
"""
