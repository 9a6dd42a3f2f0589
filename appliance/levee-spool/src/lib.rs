//! durable message bodies and the retry schedule
