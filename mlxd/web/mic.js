// The microphone's AudioWorklet: the context's samples (44.1 or 48 kHz, say) down to 16 kHz mono PCM16, posted
// to the page every 100 ms. Each output sample averages the input samples it spans (a box filter, enough
// against aliasing for speech at these ratios); the fractional position carries over from block to block.
"use strict";

const TARGET_RATE = 16000;
const CHUNK_SAMPLES = TARGET_RATE / 10;

class MicResampler extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.position = 0; // input samples gathered into the output sample being built
    this.sum = 0;
    this.count = 0;
    this.chunk = new Int16Array(CHUNK_SAMPLES);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    for (let i = 0; i < input[0].length; i++) {
      let sample = 0;
      for (let c = 0; c < channels; c++) sample += input[c][i];
      this.sum += sample / channels;
      this.count += 1;
      this.position += 1;
      if (this.position >= this.step) {
        this.position -= this.step;
        this.emit(this.sum / this.count);
        this.sum = 0;
        this.count = 0;
      }
    }
    return true;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.chunk[this.filled++] = Math.round(clipped * 32767);
    if (this.filled === CHUNK_SAMPLES) {
      this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
      this.chunk = new Int16Array(CHUNK_SAMPLES);
      this.filled = 0;
    }
  }
}

registerProcessor("mic-resampler", MicResampler);
