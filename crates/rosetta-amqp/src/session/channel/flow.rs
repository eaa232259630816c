//! `channel.flow`: the client pauses and resumes deliveries. What queues send the channel while
//! it is paused waits in `Channel::paused` and goes out, in order, when the client resumes.

use amq_protocol::protocol::{channel as chan, AMQPClass};

use super::Channel;
use crate::session::{Ctx, Exception};

impl Channel {
    /// The channel class's methods the session leaves to the channel: all but open and close.
    pub fn handle_channel_method(
        &mut self,
        ctx: &mut Ctx<'_>,
        method: chan::AMQPMethod,
    ) -> Result<(), Exception> {
        match method {
            chan::AMQPMethod::Flow(f) => {
                self.flow_active = f.active;
                ctx.send(
                    self.id,
                    AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk { active: f.active })),
                );
                if f.active {
                    for item in std::mem::take(&mut self.paused) {
                        self.handle_outbound(ctx, item);
                    }
                }
                Ok(())
            }
            chan::AMQPMethod::FlowOk(_) => Ok(()),
            other => Err(Exception::command_invalid(
                &AMQPClass::Channel(other),
                "unexpected channel method",
            )),
        }
    }
}
