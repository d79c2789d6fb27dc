//! The machine as one table (phase x input -> phase, actions), rendered from the code.
