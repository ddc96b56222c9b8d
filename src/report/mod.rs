//! The PNG reports: the loss curve of a training run ([`loss`], `lcm plot`) and the NIAH
//! accuracy heatmap ([`heatmap`], `lcm eval niah` and `merge`), with their labels' [`font`].

pub mod font;
pub mod heatmap;
pub mod loss;
