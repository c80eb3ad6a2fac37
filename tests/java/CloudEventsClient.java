import io.cloudevents.CloudEvent;
import io.cloudevents.core.builder.CloudEventBuilder;
import io.cloudevents.core.message.MessageReader;
import io.cloudevents.kafka.KafkaMessageFactory;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * A client of another language for Tierflow's tests, on the CloudEvents Java SDK's Kafka binding.
 *
 * read BOOTSTRAP TOPIC...: reads every message of the topics from the beginning and prints one
 *   line per message, "topic<TAB>type<TAB>subject<TAB>id<TAB>mode", exiting 1 at the first it cannot read.
 * send-binary BOOTSTRAP TOPIC TYPE SUBJECT SOURCE DATA_JSON: sends one event in binary mode (ce_*
 *   headers, the data as the value, content-type application/json), keyed by SUBJECT; prints its id.
 */
public final class CloudEventsClient {
    public static void main(String[] args) throws Exception {
        if (args.length >= 3 && args[0].equals("read")) {
            read(args[1], List.of(args).subList(2, args.length));
        } else if (args.length == 7 && args[0].equals("send-binary")) {
            sendBinary(args[1], args[2], args[3], args[4], args[5], args[6]);
        } else {
            System.err.println("usage: read BOOTSTRAP TOPIC... | send-binary BOOTSTRAP TOPIC TYPE SUBJECT SOURCE DATA_JSON");
            System.exit(2);
        }
    }

    private static void read(String bootstrap, List<String> topics) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("key.deserializer", StringDeserializer.class.getName());
        props.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(props)) {
            List<TopicPartition> partitions = new ArrayList<>();
            for (String topic : topics) {
                consumer.partitionsFor(topic).forEach(p -> partitions.add(new TopicPartition(topic, p.partition())));
            }
            consumer.assign(partitions);
            consumer.seekToBeginning(partitions);
            var end = consumer.endOffsets(partitions);
            while (partitions.stream().anyMatch(p -> consumer.position(p) < end.get(p))) {
                for (ConsumerRecord<String, byte[]> record : consumer.poll(Duration.ofSeconds(1))) {
                    MessageReader reader = KafkaMessageFactory.createReader(record);
                    CloudEvent event = reader.toEvent();  // throws on a message it cannot read
                    String mode = record.headers().lastHeader("ce_specversion") != null ? "binary" : "structured";
                    System.out.println(record.topic() + "\t" + event.getType() + "\t" + event.getSubject() + "\t"
                            + event.getId() + "\t" + mode);
                }
            }
        }
    }

    private static void sendBinary(String bootstrap, String topic, String type, String subject, String source,
                                   String data) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("key.serializer", StringSerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        CloudEvent event = CloudEventBuilder.v1()
                .withId(UUID.randomUUID().toString())
                .withSource(URI.create(source))
                .withType(type)
                .withSubject(subject)
                .withTime(OffsetDateTime.now())
                .withDataContentType("application/json")
                .withData(data.getBytes(StandardCharsets.UTF_8))
                .build();
        ProducerRecord<String, byte[]> record = KafkaMessageFactory.createWriter(topic, null, null, subject)
                .writeBinary(event);
        try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props)) {
            producer.send(record).get();
        }
        System.out.println(event.getId());
    }
}
