//! AMQP 0-9-1 behaviour of the real broker, driven by the lapin client (and raw frames for bad
//! input). Expected behaviour is RabbitMQ 3.x's.

mod support;
